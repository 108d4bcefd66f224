"""Core of the vision appliance: settings, intake, models, engines, pipeline, job store."""

__version__ = "0.1.0"
