"""How a candidate is scored on hardware: TVM builds, latency, memory (imports only spaces/)."""
