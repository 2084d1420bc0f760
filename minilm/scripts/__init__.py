"""The code of MiniLM's commands: one module per script, each with `build_parser()`, `main(argv)` and `command()`
(the console entry point). The repository root keeps a shim of each so `python SCRIPT.py` runs unchanged."""
