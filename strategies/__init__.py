"""clbench.strategies: one module per strategy, each a plugin registered through
``register_strategies`` exactly as a third-party package would."""
