"""Measuring retrieval: the seed question set (`retrieval`), BEIR test collections
(`beir`), the metrics (`metrics`), follow-up questions (`conversations`), the reports
(`report`), and fitting the abstention model (`calibrate`) and the answer scorer's weights
(`fit_answer`) on a calibration split, checked on the held-back rest."""
