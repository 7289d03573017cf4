"""The rails: each takes a normalised text and returns hits with spans in the original text."""
