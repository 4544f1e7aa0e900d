// Writes the cornell box with EXT_meshopt_compression and no quantization, so every view is
// stored losslessly (ATTRIBUTES for float attributes, TRIANGLES for indices, filter NONE):
//   npm install @gltf-transform/core @gltf-transform/extensions meshoptimizer
//   node make_meshopt_lossless.mjs ../../../../../examples/cornell-box/cornell_box.gltf cornell_box.meshopt.glb
import { NodeIO } from '@gltf-transform/core';
import { ALL_EXTENSIONS, EXTMeshoptCompression } from '@gltf-transform/extensions';
import { MeshoptEncoder } from 'meshoptimizer';

const [input, output] = process.argv.slice(2);
await MeshoptEncoder.ready;
const io = new NodeIO()
  .registerExtensions(ALL_EXTENSIONS)
  .registerDependencies({ 'meshopt.encoder': MeshoptEncoder });
const doc = await io.read(input);
doc
  .createExtension(EXTMeshoptCompression)
  .setRequired(true)
  .setEncoderOptions({ method: EXTMeshoptCompression.EncoderMethod.QUANTIZE });
await io.write(output, doc);
