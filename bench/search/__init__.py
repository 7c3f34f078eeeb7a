"""The search benchmark (issue 20): proxy fidelity and SAC against random search, TPE and uniform policies."""
