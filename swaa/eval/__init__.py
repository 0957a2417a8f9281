"""Long-context evaluation: synthetic tasks, scorers, user eval files, generation and reports."""
