// Vendored verbatim (below this header) from the repository Slicer/ExtensionsIndex
// (https://github.com/Slicer/ExtensionsIndex), file `.prettierrc.js`, read at commit
// 5a66c9acf3ea73d811bc3475e32da63e49c05d87. The index's pre-commit hook runs prettier with it
// on every entry (*.json); Testing/slicer/test_extension_index.py runs the same check on
// SegGradCAM.json. The plugin is resolved from Testing/extension_index/node_modules
// (installed by scripts/setup.sh: npm ci --prefix Testing/extension_index).
// Sources and versions: Testing/extension_index/README.md.
const config = {
  // Allow Prettier in .pre-commit-config.yaml to find plugins.
  // https://github.com/prettier/prettier/issues/15085
  plugins: [
    require.resolve("prettier-plugin-multiline-arrays"),
  ],
  multilineArraysWrapThreshold: 0,
};
module.exports = config;
