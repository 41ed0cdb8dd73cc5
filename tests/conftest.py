"""Shared test settings: hypothesis without wall-clock deadlines (CI machines are noisy)."""

from hypothesis import settings

settings.register_profile("instapay", deadline=None, max_examples=200)
settings.load_profile("instapay")
