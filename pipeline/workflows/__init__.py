"""What a command does, composed from the stages: `tuning` (sweep, retrain, register) and
`serving` (promote, roll back, predict, serve). Each public function is one command's work."""
