//! Topic Name and Topic Filter rules. (Stub until the decoder lands.)
