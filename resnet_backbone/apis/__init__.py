"""What users call: feature extraction, dumping, pictures, export, benchmark."""
