"""The scripts' code: each module holds one script's parser and `main` (the top-level file of that name is a shim)."""
