"""One model service's health checker and its HTTP prober thread."""
