"""Raw scanner series → the grid a model expects, and back (issue 22). Torch-free; needs the 'preprocess' extra
(SimpleITK). Modules: registration (rigid co-registration of one MR volume to another, and resampling),
skullstrip (deepbet's brain mask as ONNX, run with ONNX Runtime), atlas (the MNI152 atlas on the BraTS grid, not
SRI24, and the affine registration to it), transforms (ITK .tfm files, LPS/RAS matrices, composition)."""
