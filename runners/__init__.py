"""How a candidate is scored: short fine-tune + mAP (ultralytics), TVM build + latency + SRAM.
Imports only edgesearch.spaces."""
