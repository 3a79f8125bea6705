"""The nightly run: its schedule, eligibility, run rows, the reaper, notification and health."""
