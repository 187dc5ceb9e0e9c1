mod cli;
mod engine;
mod network;
mod process_run;
mod quickstart;
mod resources;
mod util;
mod validate;
