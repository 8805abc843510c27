//! Twilio call simulator.
