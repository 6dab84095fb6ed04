"""How a candidate is scored for accuracy: short fine-tune, mAP, sensitivity (imports only spaces/)."""
