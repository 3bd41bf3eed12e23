"""Where things are kept: the bucket of uploads (`object_store`), the results written beside them (`results_store`),
and which object each image id stands for (`registrations`)."""
