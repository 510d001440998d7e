"""The audit config (one class per YAML section), dataset specs, the generation methods' facts and parameters, and the bounded YAML reader."""
