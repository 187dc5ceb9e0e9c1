mod engine;
mod validate;
