//! Real execution of kscratch plans.
