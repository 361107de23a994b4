"""Test helpers shared by several test files (data writers, tiny models, references)."""
