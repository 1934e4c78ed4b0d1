//! kscratch-sim: the simulated cluster.
