"""Reading the store and the kernel's counters back: report tables, HTML, plots, exports."""
