"""Running the pipeline: sync to the kernel, counter sampling, the daemon's tick and the fleet."""
