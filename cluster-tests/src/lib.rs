//! Multi-process tests of whole PigeonAir clusters live in tests/cluster/.
