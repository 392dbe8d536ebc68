"""Recording: the sweep's append-only event journal (its file, its replay), what the driver knows of each trial
(records), and what a stopped sweep continues (continuation)."""
