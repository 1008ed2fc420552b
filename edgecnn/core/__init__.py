"""Foundations every layer uses: errors, atomic files and manifests, environment facts, console output."""
