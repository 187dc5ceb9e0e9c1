mod cli;
mod engine;
mod process_run;
mod quickstart;
mod util;
mod validate;
