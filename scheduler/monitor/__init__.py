"""The monitor: definitions (pending, stuck), rounds (the job), notifications."""
