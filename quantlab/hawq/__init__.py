"""HAWQ-V3 mixed precision, the baseline of the MQAT paper's compression tables."""
