//! `faultline plan`: the timeline and what each target matches now.
