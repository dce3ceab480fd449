"""Subcommands of ``jisr``, one module per group."""
