"""The monitor: consumes a region's signals, keeps windowed aggregates and a review
queue in PostgreSQL, and is the only producer of the cross-region rollup."""
