// ImageJ macro of tests/test_readers.py: open each file named in the list file (the macro's
// argument, one path a line) and print what ImageJ made of it, one tab-separated line:
// DIMS path width height channels slices frames bitDepth composite min max unit pixelWidth, then per channel
// "label|pixel(x=2,y=1)|pixel(x=0,y=3)" (RGB: r/g/b of each pixel).
list = split(File.openAsString(getArgument()), "\n");
for (i = 0; i < list.length; i++) {
    path = list[i];
    if (lengthOf(path) == 0) continue;
    open(path);
    getDimensions(w, h, c, z, t);
    getMinAndMax(lo, hi);
    s = "DIMS\t" + path + "\t" + w + "\t" + h + "\t" + c + "\t" + z + "\t" + t + "\t" + bitDepth();
    getPixelSize(unit, pw, ph);
    s = s + "\t" + is("composite") + "\t" + d2s(lo, 6) + "\t" + d2s(hi, 6) + "\t" + unit + "\t" + d2s(pw, 6);
    for (ch = 1; ch <= c; ch++) {
        if (c > 1) Stack.setChannel(ch);
        a = getPixel(2, 1);
        b = getPixel(0, 3);
        if (bitDepth() == 24) {
            a = "" + ((a >> 16) & 255) + "/" + ((a >> 8) & 255) + "/" + (a & 255);
            b = "" + ((b >> 16) & 255) + "/" + ((b >> 8) & 255) + "/" + (b & 255);
        } else if (bitDepth() == 32) {
            a = d2s(a, 6);
            b = d2s(b, 6);
        }
        s = s + "\t" + getInfo("slice.label") + "|" + a + "|" + b;
    }
    print(s);
    close();
}
