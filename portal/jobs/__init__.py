"""Background jobs run by RQ workers. Jobs take ids, reload state, and write one final state."""
