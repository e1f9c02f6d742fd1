"""The top floor: the tumorlib command, notebook helpers and the headless notebook runner."""
