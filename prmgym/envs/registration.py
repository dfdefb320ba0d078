"""Environment registration (filled in by the envs work)."""
