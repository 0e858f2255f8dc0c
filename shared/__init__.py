"""photo-sync: keeps SharePoint Online profile pictures in step with Microsoft 365 photos."""
