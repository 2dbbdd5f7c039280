"""A small physical world: coloured balls and boxes that bounce, roll, fall and fly, seeded and rendered in numpy.

The default model is trained on it, and its videos are judged against it: `scene` draws a clip's
parameters and simulates its motion, `render` draws the frames, `captions` says what happens in
English and in Chinese, and `reading` reads colour, object, motion and setting back from any frames.
"""
