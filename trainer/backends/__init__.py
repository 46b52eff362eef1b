"""Where training jobs run: ``local`` processes or Vertex AI CustomJobs."""
