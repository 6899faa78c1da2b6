"""clbench.plugins: built-in plugins that are neither strategies nor streams (executors,
reporters, progress)."""
