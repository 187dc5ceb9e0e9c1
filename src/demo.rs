//! `faultline demo-target`: a tiny HTTP service with a worker child, for the quickstart.
