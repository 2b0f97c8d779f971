"""The audit service: receives OCSF events from every component over mTLS, keeps them in
a hash-chained, signed, append-only log, runs Sigma detection and correlation rules over
them, raises alerts and takes the response actions a rule names."""
