"""The only modules that touch private APIs of the libraries finesweep builds on, one module per library.

Each names what it uses and why, checks on import that the installed version still has it, and fails with one
line that says which version it was written for; ``tests/adapters`` fails the same way when a new pinned version
changes any of it.
"""
