"""Turning a study into a Pareto report. Takes plain trial data (dicts); imports no other edgesearch folder."""
