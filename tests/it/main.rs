mod engine;
mod process_run;
mod util;
mod validate;
