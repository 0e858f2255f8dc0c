"""photo-sync: keeps SharePoint Online profile pictures in step with Microsoft 365 photos."""

__version__ = "0.2.0"  # the same as pyproject.toml's; sent in every request's User-Agent
