"""What every llmspool process agrees on: keys, wire messages, protocol models, settings, errors."""
