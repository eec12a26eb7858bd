"""The `dltrain` command."""
